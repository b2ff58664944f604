"""Webhook subscriptions: durable per-subscription consumers, signed deliveries with retries."""
