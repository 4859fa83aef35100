import sys

from slurmkit.launch.cli import main

sys.exit(main())
