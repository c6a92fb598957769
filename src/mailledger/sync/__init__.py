"""Mailbox sync (DESIGN §12): the server connects to a staff member's mailbox and imports mail."""
