"""A realistic crowd: 60 people writing 600 messages over the four channels, some on two."""

from __future__ import annotations

import random
from dataclasses import dataclass

from channels.base import InboundMessage
from tests.worker.helpers import inbound


@dataclass(frozen=True)
class Person:
    number: int
    phone: str | None
    email: str | None

    @property
    def key(self) -> str:
        return self.phone or self.email or ""


def crowd(people: int = 60, per_person: int = 10) -> tuple[list[Person], list[InboundMessage]]:
    """Each person writes `per_person` messages. By number mod 4: SMS only; WhatsApp and SMS
    (matched by phone); email only; Telegram sharing a phone, and SMS (matched by phone)."""
    persons: list[Person] = []
    messages: list[InboundMessage] = []
    for n in range(people):
        phone = f"+1415556{n:04d}"
        kind = n % 4
        person = Person(n, None, f"person{n}@example.com") if kind == 2 else Person(n, phone, None)
        persons.append(person)
        for k in range(per_person):
            if kind == 0:
                messages.append(inbound("sms", phone=phone))
            elif kind == 1:
                messages.append(
                    inbound("whatsapp", sender_id=phone[1:], phone=phone, display_name=f"W{n}")
                    if k % 2
                    else inbound("sms", phone=phone)
                )
            elif kind == 2:
                messages.append(inbound("email", email=person.email, display_name=f"E{n}"))
            else:
                messages.append(
                    inbound(
                        "telegram",
                        sender_id=str(900000 + n),
                        phone=phone,
                        display_name=f"T{n}",
                        language="es",
                    )
                    if k % 2
                    else inbound("sms", phone=phone)
                )
    random.Random(7).shuffle(messages)
    return persons, messages
