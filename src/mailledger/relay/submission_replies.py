"""Every reply the submission listeners give of their own, as (code, enhanced status, text).

Constants of the one ``mail.replies.Reply`` type. The capture listener's table there covers
what both share (queued, bare newlines, storage failures); these are the ones only an
authenticating relay needs (RFC 4954 §6 for AUTH, RFC 6409 for submission, RFC 3463 for the
enhanced codes).
"""

from __future__ import annotations

from mailledger.mail.replies import Reply

AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
# RFC 4954 §6: a temporary failure; the lock lifts by itself.
AUTH_LOCKED = Reply(454, "4.7.0", "Too many failed logins; try again later")
AUTH_UNAVAILABLE = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type; use PLAIN or LOGIN")
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
AUTH_SYNTAX = Reply(501, "5.5.2", "Malformed AUTH data")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
TOO_MANY_AUTH = Reply(421, "4.7.0", "Too many AUTH attempts on one connection")
TOO_MANY_MESSAGES = Reply(421, "4.7.0", "Too many messages on one connection; reconnect")
TOO_MANY_FROM_CLIENT = Reply(421, "4.7.0", "Too many connections from your address")

# RFC 3463 §3.8 (X.7.1): the sender is not allowed to send as this address.
NOT_YOUR_ADDRESS = Reply(550, "5.7.1", "Sender address not yours")
NULL_SENDER = Reply(550, "5.7.1", "The null sender is not allowed on submission")
UNPARSEABLE = Reply(550, "5.6.0", "Message could not be parsed")
NO_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
# RFC 5322 §3.6: From, To, Subject, Message-ID … appear at most once (capture quarantines them).
REPEATED_HEADER = Reply(550, "5.6.0", "A header that is allowed once is repeated")
