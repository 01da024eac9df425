"""Reading results: predicted-vs-measured comparison, step accounting, reports, notes."""
