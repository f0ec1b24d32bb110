"""Property-based fuzzing of every parser that reads input from outside the box (hypothesis)."""
