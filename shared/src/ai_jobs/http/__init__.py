"""HTTP layer support: what the thin Vercel handlers in functions/ call."""
