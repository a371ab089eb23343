import sys

from deepedge.cli import main

sys.exit(main())
