import sys

from facevoice.cli import main

sys.exit(main())
