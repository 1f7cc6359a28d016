import sys

from nxd.cli import main

sys.exit(main())
