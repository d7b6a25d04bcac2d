import sys

from smartgate.cli import main

sys.exit(main())
