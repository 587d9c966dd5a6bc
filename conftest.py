"""Root pytest configuration: unit tests and nbval both run in the ci profile, offline.

The environment is set before any kernel starts, so every notebook nbval runs
inherits it. Explicit settings (e.g. COURSE_PROFILE=cpu pytest ...) win.
"""

import os

os.environ.setdefault("COURSE_PROFILE", "ci")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
