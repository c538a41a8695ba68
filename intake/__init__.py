"""Intake: provider webhooks in, deduplicated contacts out. This package holds the settings and the command line."""
