"""The tests' SMTP server: aiosmtpd's Maildir handler, with recipients that a real mail
server refuses, by the local part of the address:

- ``nobody@…``  550 5.1.1: no such user (refused for good, the address named as the cause);
- ``gone@…``    550 without an enhanced code (refused, cause not said);
- ``busy@…``    451 4.2.0 the first time, accepted from then on (a greylisting server);
- ``slow@…``    452 4.2.2 every time (a mailbox over its quota, for now).

Every other address is accepted. Each mail is stored with ``X-RcptTo`` naming its envelope,
and every RCPT asked for, accepted or not, is logged as a line of ``rcpt.log`` beside the
Maildir.
"""

import os

from aiosmtpd.handlers import Mailbox


class Refusing(Mailbox):
    def __init__(self, mail_dir):
        super().__init__(mail_dir)
        self.seen = set()
        self.log = os.path.join(os.path.dirname(os.path.abspath(mail_dir)), "rcpt.log")

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with open(self.log, "a") as f:
            f.write(address + "\n")
        local = address.split("@", 1)[0].lower()
        if local == "nobody":
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local == "gone":
            return "550 Requested action not taken: mailbox unavailable"
        if local == "slow":
            return "452 4.2.2 Mailbox full, try again later"
        if local == "busy" and address not in self.seen:
            self.seen.add(address)
            return "451 4.2.0 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"
