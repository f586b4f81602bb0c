import sys

from instasam.cli import main

sys.exit(main())
