"""Webmail compose against a real `postoffice serve`: httpx submits the forms the pages render,
and the results are read back over IMAP."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import imaplib
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from conftest import Cli, ServeProcess, StartServe, set_config
from outbound_helpers import DnsServer, Sink
from postoffice.web.webmail.submit import (
    Composition,
    InvalidAddresses,
    MessageRef,
    build_message,
    forward,
    parse_addresses,
    reply,
    serialize,
)
from test_queue_serve import point_queue_at

ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"
PASSWORD = "correct horse"

Fields = list[tuple[str, str]]


class _FormReader(HTMLParser):
    """The fields of the compose form as a browser would submit them (without the buttons)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: Fields = []
        self.checkboxes: list[str] = []  # "keep" values offered, ticked or not
        self._select: str | None = None
        self._textarea: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "input" and a.get("name") and a.get("type") != "file":
            if a.get("type") == "checkbox":
                self.checkboxes.append(a.get("value", ""))
                if "checked" not in a:
                    return
            self.fields.append((a["name"], a.get("value", "")))
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select is not None and "selected" in a:
            self.fields.append((self._select, a["value"]))
        elif tag == "textarea":
            self._textarea, self._text = a["name"], ""

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            # As browsers do (HTML §13.2.6.4.7): a newline right after <textarea> is dropped.
            self.fields.append((self._textarea, self._text.removeprefix("\n")))
            self._textarea = None


def form_of(page: str) -> _FormReader:
    reader = _FormReader()
    reader.feed(page[page.index('<form method="post" action="/compose"') :])
    return reader


def with_values(fields: Fields, **values: str) -> Fields:
    kept = [(k, v) for k, v in fields if k not in values]
    return kept + list(values.items())


class Webmail:
    """One logged-in browser session."""

    def __init__(self, server: ServeProcess, address: str) -> None:
        host, port = server.address("http")
        self.client = httpx.Client(base_url=f"http://{host}:{port}", timeout=30)
        answer = self.client.post("/login", data={"address": address, "password": PASSWORD})
        assert answer.status_code == 303, answer.text

    def compose(self, query: str = "") -> _FormReader:
        page = self.client.get(f"/compose{query}")
        assert page.status_code == 200, page.text
        return form_of(page.text)

    def submit(
        self,
        fields: Fields,
        action: str = "send",
        files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
    ) -> httpx.Response:
        return self.client.post(
            "/compose",
            data=_grouped([*fields, ("action", action)]),
            # An empty file part makes the request multipart/form-data, as a browser's is.
            files=files or [("attachments", ("", b"", "application/octet-stream"))],
        )

    def send(self, **values: str) -> httpx.Response:
        return self.submit(with_values(self.compose().fields, **values))

    def close(self) -> None:
        self.client.close()


def _grouped(fields: Fields) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in fields:
        grouped.setdefault(name, []).append(value)
    return grouped


def mailbox(server: ServeProcess, address: str, name: str = "INBOX") -> list[tuple[str, bytes]]:
    """(FLAGS, message) of every message in a mailbox, read over IMAP."""
    with imaplib.IMAP4(*server.address("imap"), timeout=10) as imap:
        imap.login(address, PASSWORD)
        _, count = imap.select(name, readonly=True)
        if count == [b"0"]:
            return []
        _, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[])")
        found = []
        for item in data:
            if isinstance(item, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                assert flags is not None
                found.append((flags[1].decode(), item[1]))
        return found


def parsed(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


@pytest.fixture
def accounts(data_dir: Path) -> None:
    cli = Cli(data_dir)
    for address in (ALICE, BOB, CAROL):
        cli.ok("user", "add", address, "--password-stdin", stdin=PASSWORD + "\n")


@pytest.fixture
def served(accounts: None, start_serve: StartServe) -> ServeProcess:
    return start_serve()


@pytest.fixture
def alice(served: ServeProcess) -> Iterator[Webmail]:
    session = Webmail(served, ALICE)
    yield session
    session.close()


@pytest.fixture
def bob(served: ServeProcess) -> Iterator[Webmail]:
    session = Webmail(served, BOB)
    yield session
    session.close()


def test_send_with_attachment_arrives_and_is_kept_in_sent(
    served: ServeProcess, alice: Webmail
) -> None:
    fields = with_values(
        alice.compose().fields, to=f"Bób <{BOB}>", subject="Größe", body="Hallo Bob,\nanbei.\n"
    )
    files = [("attachments", ("report.pdf", b"%PDF-1.4 fake", "application/pdf"))]
    answer = alice.submit(fields, files=files)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/mail?f=Sent"

    [(flags, raw)] = mailbox(served, BOB)
    assert "\\Seen" not in flags
    msg = parsed(raw)
    assert msg["From"] == ALICE
    assert msg["To"] == f"Bób <{BOB}>"
    assert raw.isascii()  # encoded words and quoted-printable: no 8-bit needed
    assert msg["Subject"] == "Größe"
    assert msg["Message-ID"].endswith("@mail.example.test>")
    assert msg["User-Agent"] == "postoffice webmail"
    body = msg.get_body(("plain",))
    assert body is not None and body.get_content() == "Hallo Bob,\r\nanbei.\r\n"
    [attachment] = msg.iter_attachments()
    assert attachment.get_filename() == "report.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == b"%PDF-1.4 fake"
    assert "with HTTP" in msg["Received"]

    [(sent_flags, sent_raw)] = mailbox(served, ALICE, "Sent")
    assert "\\Seen" in sent_flags
    assert parsed(sent_raw)["Message-ID"] == msg["Message-ID"]


def test_bcc_goes_in_the_envelope_only(served: ServeProcess, alice: Webmail) -> None:
    assert alice.send(to=BOB, bcc=CAROL, subject="secret copy").status_code == 303
    for address in (BOB, CAROL):
        [(_, raw)] = mailbox(served, address)
        assert parsed(raw)["Subject"] == "secret copy"
        assert parsed(raw)["Bcc"] is None
        if address == BOB:
            assert CAROL.encode() not in raw
    [(_, sent)] = mailbox(served, ALICE, "Sent")
    assert parsed(sent)["Bcc"] == CAROL


def test_reply_threads_and_marks_the_original_answered(
    served: ServeProcess, alice: Webmail, bob: Webmail
) -> None:
    assert (
        bob.send(to=ALICE, subject="Lunch?", body="Noon at the usual place?\n").status_code == 303
    )
    [(_, original_raw)] = mailbox(served, ALICE)
    original = parsed(original_raw)

    form = alice.compose("?reply=1&f=INBOX")
    fields = dict(form.fields)
    assert fields["to"] == BOB
    assert fields["subject"] == "Re: Lunch?"
    assert fields["in_reply_to"] == original["Message-ID"]
    assert "> Noon at the usual place?" in fields["body"]
    assert alice.submit(with_values(form.fields, body="Yes!\n" + fields["body"])).status_code == 303

    [(_, answer_raw)] = mailbox(served, BOB)
    answer = parsed(answer_raw)
    assert answer["In-Reply-To"] == original["Message-ID"]
    assert answer["References"] == original["Message-ID"]
    [(flags, _)] = mailbox(served, ALICE)
    assert "\\Answered" in flags


def test_reply_all_copies_the_other_recipients(
    served: ServeProcess, alice: Webmail, bob: Webmail
) -> None:
    assert bob.send(to=f"{ALICE}, {CAROL}", subject="plans").status_code == 303
    fields = dict(alice.compose("?reply_all=1&f=INBOX").fields)
    assert fields["to"] == BOB
    assert fields["cc"] == CAROL  # alice herself is left out


def test_forward_as_attachment(served: ServeProcess, alice: Webmail, bob: Webmail) -> None:
    assert bob.send(to=ALICE, subject="the report", body="see here\n").status_code == 303
    form = alice.compose("?forward=1&f=INBOX&as=attachment")
    assert form.checkboxes == ["0"]
    assert dict(form.fields)["subject"] == "Fwd: the report"
    assert alice.submit(with_values(form.fields, to=CAROL)).status_code == 303

    [(_, raw)] = mailbox(served, CAROL)
    [attachment] = parsed(raw).iter_attachments()
    assert attachment.get_content_type() == "message/rfc822"
    inner = attachment.get_content()
    assert inner["Subject"] == "the report"
    [(flags, _)] = mailbox(served, ALICE)
    assert "$Forwarded" in flags


def test_forward_inline_keeps_the_ticked_attachments(
    served: ServeProcess, alice: Webmail, bob: Webmail
) -> None:
    files = [
        ("attachments", ("a.txt", b"first", "text/plain")),
        ("attachments", ("b.bin", b"second", "application/octet-stream")),
    ]
    bob_form = with_values(bob.compose().fields, to=ALICE, subject="two files", body="both\n")
    assert bob.submit(bob_form, files=files).status_code == 303
    form = alice.compose("?forward=1&f=INBOX")
    assert form.checkboxes == ["0", "1"]
    fields = [(k, v) for k, v in form.fields if (k, v) != ("keep", "0")]
    assert "both" in dict(fields)["body"]
    assert alice.submit(with_values(fields, to=CAROL)).status_code == 303

    [(_, raw)] = mailbox(served, CAROL)
    [attachment] = parsed(raw).iter_attachments()
    assert attachment.get_filename() == "b.bin"
    assert attachment.get_content() == b"second"


def test_draft_is_saved_edited_and_sent(served: ServeProcess, alice: Webmail) -> None:
    fields = with_values(alice.compose().fields, to=BOB, bcc=CAROL, subject="draft one")
    files = [("attachments", ("notes.txt", b"keep me", "text/plain"))]
    saved = alice.submit(fields, action="save", files=files)
    assert saved.status_code == 303
    assert saved.headers["location"] == "/compose?draft=1&f=Drafts&saved=1"
    [(flags, raw)] = mailbox(served, ALICE, "Drafts")
    assert "\\Draft" in flags and "\\Seen" in flags
    assert parsed(raw)["Bcc"] == CAROL

    form = alice.compose("?draft=1&f=Drafts&saved=1")
    assert dict(form.fields)["subject"] == "draft one"
    assert dict(form.fields)["bcc"] == CAROL
    assert form.checkboxes == ["0"]  # the attachment stays with the draft
    resaved = alice.submit(with_values(form.fields, subject="draft two"), action="save")
    assert resaved.headers["location"] == "/compose?draft=2&f=Drafts&saved=1"
    [(_, raw)] = mailbox(served, ALICE, "Drafts")
    assert parsed(raw)["Subject"] == "draft two"  # replaced, not added

    form = alice.compose("?draft=2&f=Drafts")
    assert alice.submit(form.fields).status_code == 303
    assert mailbox(served, ALICE, "Drafts") == []
    [(_, raw)] = mailbox(served, BOB)
    msg = parsed(raw)
    assert msg["Subject"] == "draft two"
    assert [a.get_filename() for a in msg.iter_attachments()] == ["notes.txt"]
    assert msg["X-Postoffice-Source"] is None


def test_a_sender_not_owned_is_refused(served: ServeProcess, alice: Webmail) -> None:
    answer = alice.send(to=CAROL, subject="forged", **{"from": BOB})
    assert answer.status_code == 422
    assert f"{BOB} is not one of your addresses" in answer.text
    assert mailbox(served, CAROL) == []


def test_bad_recipients_are_named(served: ServeProcess, alice: Webmail) -> None:
    answer = alice.send(to=f"nobody@example.test, {BOB}", cc="not an address")
    assert answer.status_code == 422
    assert "<strong>nobody@example.test</strong>: no such user here" in answer.text
    assert "not an email address" in answer.text
    # Nothing goes out while any recipient is wrong; the form keeps what was typed.
    assert mailbox(served, BOB) == []
    assert dict(form_of(answer.text).fields)["to"] == f"nobody@example.test, {BOB}"


def test_a_post_without_the_csrf_token_is_refused(served: ServeProcess, alice: Webmail) -> None:
    fields = with_values(alice.compose().fields, to=BOB, csrf="forged")
    assert alice.submit(fields).status_code == 403
    assert mailbox(served, BOB) == []


def test_oversize_attachments_are_refused(
    accounts: None, data_dir: Path, start_serve: StartServe
) -> None:
    set_config(data_dir, "webmail", "max_upload", "4096")
    served = start_serve()
    alice = Webmail(served, ALICE)
    try:
        fields = with_values(alice.compose().fields, to=BOB)
        # Over the total though within the request's allowance: counted after the upload.
        answer = alice.submit(fields, files=[("attachments", ("big.bin", b"x" * 5000, "a/b"))])
        assert answer.status_code == 413
        assert "The attachments are larger than 4 KB in total." in answer.text
        assert "Attach these files again" in answer.text and "big.bin" in answer.text
        # Far over: refused as it arrives.
        huge = [("attachments", ("huge.bin", b"x" * (2 << 20), "application/octet-stream"))]
        assert alice.submit(fields, files=huge).status_code == 413
        assert mailbox(served, BOB) == []
    finally:
        alice.close()


def test_compose_needs_a_login(served: ServeProcess) -> None:
    host, port = served.address("http")
    answer = httpx.get(f"http://{host}:{port}/compose?reply=1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login"


async def test_remote_recipients_are_queued_and_signed(
    accounts: None, data_dir: Path, start_serve: StartServe
) -> None:
    dns = await DnsServer().start()
    dns.mail_domain("remote.test")
    sink = await Sink().start()
    try:
        point_queue_at(data_dir, dns, sink)
        Cli(data_dir).ok("dkim", "generate", "example.test", "--algorithm", "ed25519")
        served = await asyncio.to_thread(start_serve)

        def send() -> int:
            alice = Webmail(served, ALICE)
            try:
                answer = alice.send(to="friend@remote.test", bcc=BOB, subject="out there")
                return answer.status_code
            finally:
                alice.close()

        assert await asyncio.to_thread(send) == 303
        for _ in range(600):  # up to 30 s
            if sink.received:
                break
            await asyncio.sleep(0.05)
        [received] = sink.received
        assert received.sender == ALICE
        assert received.recipients == ["friend@remote.test"]
        msg = parsed(received.data)
        assert msg["Subject"] == "out there"
        assert "d=example.test" in msg["DKIM-Signature"]
        assert msg["Bcc"] is None
        [(_, local)] = await asyncio.to_thread(mailbox, served, BOB)
        assert parsed(local)["Message-ID"] == msg["Message-ID"]
    finally:
        await sink.close()
        dns.close()


def test_a_recipient_refused_at_delivery_gets_a_bounce_and_full_sent_a_notice(
    accounts: None, data_dir: Path, start_serve: StartServe
) -> None:
    # Under quota when checked, over it with this message: refused only at delivery.
    Cli(data_dir).ok("user", "quota", BOB, "2K")
    served = start_serve()
    alice = Webmail(served, ALICE)
    try:
        answer = alice.send(to=f"{BOB}, {CAROL}", subject="long", body="words " * 1000)
        assert answer.status_code == 303
        assert mailbox(served, BOB) == []
        [(_, delivered)] = mailbox(served, CAROL)
        assert parsed(delivered)["Subject"] == "long"
        assert len(mailbox(served, ALICE, "Sent")) == 1
        [(_, report)] = mailbox(served, ALICE)  # the bounce names bob
        assert parsed(report).get_content_type() == "multipart/report"
        assert BOB.encode() in report

        Cli(data_dir).ok("user", "quota", ALICE, "12K")  # full with the bounce and Sent
        answer = alice.send(to=CAROL, subject="again", body="words " * 1000)
        assert answer.status_code == 200
        assert "Message sent" in answer.text
        assert "no room left to keep a copy in Sent" in answer.text
        assert len(mailbox(served, CAROL)) == 2
        assert len(mailbox(served, ALICE, "Sent")) == 1
    finally:
        alice.close()


# -- building and pre-filling, without a server ------------------------------------------------


def original(**headers: str) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("line one\n> quoted before\n")
    return msg


def test_addresses_are_parsed_and_the_bad_ones_named() -> None:
    addresses = parse_addresses(f'{BOB}, "Carol, C." <{CAROL}>')
    assert [a.addr_spec for a in addresses] == [BOB, CAROL]
    assert addresses[1].display_name == "Carol, C."
    with pytest.raises(InvalidAddresses) as refused:
        parse_addresses(f"{BOB}, nodomain, a@b@c")
    assert "nodomain" in refused.value.entries


def test_typed_line_breaks_cannot_add_header_fields() -> None:
    with pytest.raises(InvalidAddresses):
        parse_addresses(f"{BOB}\r\nBcc: {CAROL}")
    for draft in (False, True):
        composition = Composition(
            sender=ALICE,
            to=f"{BOB}\r\nBcc: {CAROL}" if draft else BOB,
            subject="hi\r\nBcc: evil@remote.test",
        )
        msg = build_message(composition, date="now", message_id="<1@x>", draft=draft)
        assert parsed(serialize(msg))["Bcc"] is None
        assert parsed(serialize(msg))["Subject"] == "hi Bcc: evil@remote.test"


def test_reply_prefill() -> None:
    ref = MessageRef("INBOX", 7)
    first = original(
        From=f"Bob <{BOB}>",
        Reply_To="list@remote.test",
        To=f"{ALICE}, {CAROL}",
        Subject="Re: Fwd: RE: plans",
        Message_ID="<m2@remote.test>",
        References="<m1@remote.test>",
    )
    answer = reply(first, ref, [ALICE], everyone=True)
    assert answer.to == "list@remote.test"
    assert answer.cc == CAROL
    assert answer.subject == "Re: plans"
    assert answer.references == "<m1@remote.test> <m2@remote.test>"
    assert "\n> line one\n>> quoted before\n" in answer.body
    # Answering one's own message (from Sent) goes to whom it went to.
    own = original(From=ALICE, To=BOB, Subject="mine")
    assert reply(own, ref, [ALICE], everyone=False).to == BOB


def test_html_only_originals_are_quoted_as_text() -> None:
    msg = email.message.EmailMessage()
    msg["From"] = BOB
    msg.set_content("<p>Hi &amp; bye</p><script>alert(1)</script>", subtype="html")
    composition = forward(msg, MessageRef("INBOX", 1), ALICE, inline=True)
    assert "Hi & bye" in composition.body
    assert "alert" not in composition.body and "<p>" not in composition.body
