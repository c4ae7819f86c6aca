"""Bundled data (YAML); a package only so that it installs with alisa."""
