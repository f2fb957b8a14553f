import sys

from gbm.cli import main

sys.exit(main())
