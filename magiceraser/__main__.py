import sys

from magiceraser.cli import main

sys.exit(main())
