import sys

from dfl.cli import main

sys.exit(main())
