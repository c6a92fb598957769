"""The demo tenant that `make run` creates, so a newcomer can watch a capture happen."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailledger.mail.addresses import capture_address
from mailledger.store import directory
from mailledger.store.models import Tenant

DEMO_TENANT = "acme"
DEMO_CAPTURE_DOMAIN = "acme.capture.example"
DEMO_CUSTOMER_DOMAIN = "acme.example"
DEMO_STAFF = "richard"
DEMO_STAFF_ADDRESSES = ("richard@acme.example", "richard.smith@gmail.com")
DEMO_CONTACT = "carol@client.example"
DEMO_COMPANY = "Client Co"
DEMO_COMPANY_DOMAIN = "client.example"


@dataclass(frozen=True, slots=True)
class DemoAddresses:
    """What the demo prints: the addresses to try."""

    user_capture: str
    log_capture: str
    staff_address: str
    contact_address: str


def seed_demo(session: Session) -> DemoAddresses:
    """Create the demo tenant, staff member, company and contact unless they exist."""
    existing = session.scalars(select(Tenant).where(Tenant.name == DEMO_TENANT)).one_or_none()
    if existing is None:
        tenant = directory.add_tenant(
            session, DEMO_TENANT, DEMO_CAPTURE_DOMAIN, [DEMO_CUSTOMER_DOMAIN]
        )
        directory.add_staff(
            session, tenant, DEMO_STAFF, list(DEMO_STAFF_ADDRESSES), name="Richard Smith"
        )
        directory.add_company(session, tenant, DEMO_COMPANY, [DEMO_COMPANY_DOMAIN])
        directory.add_contact(
            session, tenant, [DEMO_CONTACT], name="Carol Client", company=DEMO_COMPANY
        )
    return DemoAddresses(
        user_capture=capture_address(DEMO_STAFF, DEMO_CAPTURE_DOMAIN),
        log_capture=capture_address("log", DEMO_CAPTURE_DOMAIN),
        staff_address=DEMO_STAFF_ADDRESSES[0],
        contact_address=DEMO_CONTACT,
    )


def demo_email(subject: str = "Quote for the new office") -> EmailMessage:
    """The email `mailledger demo send` sends: Carol, a known contact, writing to Richard."""
    msg = EmailMessage()
    msg["Message-ID"] = make_msgid(domain=DEMO_COMPANY_DOMAIN)
    msg["Date"] = formatdate(localtime=True)
    msg["From"] = f"Carol Client <{DEMO_CONTACT}>"
    msg["To"] = f"Richard Smith <{DEMO_STAFF_ADDRESSES[0]}>"
    msg["Subject"] = subject
    msg.set_content(
        "Hello Richard,\n\nCould you send us the quote for the new office by Friday?\n\nCarol\n"
    )
    return msg
