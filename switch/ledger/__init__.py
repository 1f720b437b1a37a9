"""The only code that speaks SQL: the store and its writer, events and the outbox, relay, verify."""
