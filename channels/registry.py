"""Every provider adapter, by the route it answers under /webhooks/{tenant_id}/."""

from __future__ import annotations

from channels import email_raw, mailgun, telegram, twilio, whatsapp
from channels.base import ChannelAdapter

ADAPTERS: tuple[ChannelAdapter, ...] = (
    twilio.ADAPTER,
    whatsapp.ADAPTER,
    telegram.ADAPTER,
    mailgun.ADAPTER,
    email_raw.ADAPTER,
)
