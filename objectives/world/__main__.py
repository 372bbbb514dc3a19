import sys

from objectives.world.cli import main

sys.exit(main())
