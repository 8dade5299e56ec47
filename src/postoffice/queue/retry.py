"""When to try a recipient again, when to give up, when to warn the sender (RFC 5321 §4.5.4.1).

Pure arithmetic on timestamps, so the schedule is tested without waiting: the worker passes
the clock's `now` and the message's arrival time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from postoffice.config import QueueConfig


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    schedule: tuple[int, ...]  # seconds after the 1st, 2nd, ... failure; the last repeats
    give_up_after: int  # seconds since arrival
    delay_warning_after: int  # seconds since arrival; 0: never

    @classmethod
    def from_config(cls, config: QueueConfig) -> RetryPolicy:
        return cls(config.retry_schedule, config.give_up_after, config.delay_warning_after)

    def next_attempt(
        self, created: dt.datetime, failures: int, now: dt.datetime
    ) -> dt.datetime | None:
        """After the `failures`-th temporary failure (1 for the first), when to try again;
        None when the message is too old and must bounce.

        The last retry is pulled in to the expiry time, so a message gets its final attempt
        at exactly `give_up_after` rather than up to one interval later.
        """
        expires = created + dt.timedelta(seconds=self.give_up_after)
        if now >= expires:
            return None
        delay = self.schedule[min(failures, len(self.schedule)) - 1]
        return min(now + dt.timedelta(seconds=delay), expires)

    def warning_due(self, created: dt.datetime, now: dt.datetime) -> bool:
        return self.delay_warning_after > 0 and now - created >= dt.timedelta(
            seconds=self.delay_warning_after
        )
