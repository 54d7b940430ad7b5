"""``python -m discord_voice demo``: see discord_voice.demo."""

import sys

from discord_voice.demo import main

sys.exit(main())
