"""``Notifier`` for email channels: standard-library ``smtplib`` in a worker thread.

Settings ``SMTP_HOST`` / ``SMTP_PORT`` / ``SMTP_FROM`` (plus optional STARTTLS and login).
A 5xx answer (e.g. recipient refused) is permanent; connection errors and 4xx are retried.
The ``Message-ID`` derives from the idempotency key, so mail systems can fold a duplicate.
"""

from __future__ import annotations

import asyncio
import json
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from ..application.delivery import DeliveryResult, NotificationJob

__all__ = ["SmtpEmailNotifier", "compose"]

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9.\-]")


def compose(job: NotificationJob, sender: str) -> EmailMessage:
    """The email for one notification: a one-line summary, then the JSON payload."""
    target = job.target
    subject_of = str(target.get("protocol") or target.get("token") or job.rule_id)
    name = job.rule_name or f"rule {job.rule_id}"
    message = EmailMessage()
    message["From"] = sender
    message["To"] = str(job.channel.get("address", ""))
    message["Subject"] = f"[defi-realtime] {name}: {subject_of} {job.condition}"
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = f"<{_ID_UNSAFE.sub('.', job.idempotency_key)}@defi-realtime>"
    message["X-Idempotency-Key"] = job.idempotency_key
    payload = json.dumps(job.payload(), indent=2, ensure_ascii=False)
    message.set_content(
        f"Alert {name} is {job.condition}: measure {job.measure:g} "
        f"(observed at {job.observed_at:.0f}, log position {job.position}).\n\n{payload}\n"
    )
    return message


class SmtpEmailNotifier:
    """Sends one email per attempt over a fresh SMTP connection (alerts are rare; a pooled
    connection would have to survive idle timeouts for little gain)."""

    def __init__(
        self,
        host: str | None,
        port: int = 25,
        sender: str = "alerts@defi-realtime.invalid",
        *,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.starttls = starttls
        self.username = username
        self.password = password
        self.timeout = timeout

    async def send(self, job: NotificationJob) -> DeliveryResult:
        if not self.host:
            return DeliveryResult(ok=False, error="email is not configured", retryable=False)
        message = compose(job, self.sender)
        return await asyncio.to_thread(self._send, message)

    def _send(self, message: EmailMessage) -> DeliveryResult:
        assert self.host is not None
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            permanent = all(code >= 500 for code in codes)
            return DeliveryResult(
                ok=False, error=f"recipient refused: {codes}", retryable=not permanent
            )
        except smtplib.SMTPResponseException as error:
            return DeliveryResult(
                ok=False,
                error=f"SMTP {error.smtp_code}: {error.smtp_error!r}",
                retryable=error.smtp_code < 500,
            )
        except (OSError, smtplib.SMTPException) as error:
            return DeliveryResult(ok=False, error=f"{type(error).__name__}: {error}")
        return DeliveryResult(ok=True)
