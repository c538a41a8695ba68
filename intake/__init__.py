"""Intake: provider webhooks in, deduplicated contacts out.

This package holds the settings, the command line and the demo.
"""
