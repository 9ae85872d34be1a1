import sys

from sparse_lab.cli import main

sys.exit(main())
