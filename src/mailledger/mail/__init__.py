"""The mail vocabulary: addresses, parsing, content, MIME bounds, automated mail, SMTP replies.

The bottom layer: it imports nothing else of ours but configuration and logging.
"""
