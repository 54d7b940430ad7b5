"""``python -m discord_voice``: the command line (see discord_voice.cli)."""

import sys

from discord_voice.cli import main

sys.exit(main())
