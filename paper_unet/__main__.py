import sys

from paper_unet.cli import main

sys.exit(main())
