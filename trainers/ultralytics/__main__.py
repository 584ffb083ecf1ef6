import os
import sys

from trainers.ultralytics.cli import main

code = main()
# Everything is written and reported by now; skip the interpreter's slow teardown of torch,
# Ultralytics and MLflow (about 2 s) so the desktop sees the run finish when it finishes.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
