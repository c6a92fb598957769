"""Calendar sync (DESIGN §13): CalDAV accounts, events both ways, recurrence, meetings."""
