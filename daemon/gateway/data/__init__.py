"""The data API (admin scope): erase a principal's or an end user's data, export it first."""
