"""Test harness shared by the tests and the benchmarks: stand-ins for the parts a unit under test
talks to. Not used by the daemons."""

from deepedge.testing._boards import answer_preflights
from deepedge.testing._clock import FakeClock

__all__ = ["FakeClock", "answer_preflights"]
