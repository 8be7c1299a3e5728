"""Roost: one asyncio mail server doing the jobs of Postfix, local(8) and Dovecot."""

from __future__ import annotations

__version__ = "0.1.0"
