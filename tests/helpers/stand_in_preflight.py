"""A stand-in for ``python -m deepedge.training.preflight`` beside the stand-in worker
(tests/helpers/stand_in_worker.py): its ``test:*`` models are no real models, so it answers ok,
except for the model ``test:refuse``."""

from __future__ import annotations

import json
import sys


def main() -> int:
    request = json.loads(sys.stdin.readline())
    if request["spec"]["model"] == "test:refuse":
        print(json.dumps({"ok": False, "check": "model", "reason": f"node {request['node']}: model: refused"}))
        return 2
    print(json.dumps({"ok": True, "samples": 3200, "classes": 4}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
