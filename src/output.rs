//! Output for people: tables, colour, the live count while waiting.
