import sys

from trainers.ultralytics.cli import main

sys.exit(main())
