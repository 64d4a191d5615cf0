"""Split computing: stop a forward after a site (run_until), finish it elsewhere (resume_from)."""

from auto_hookpoint.split.early_output import EarlyOutput, model_fingerprint
from auto_hookpoint.split.exit import SplitExit, run_until
from auto_hookpoint.split.resume import resume_from

__all__ = ["EarlyOutput", "SplitExit", "model_fingerprint", "resume_from", "run_until"]
