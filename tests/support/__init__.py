"""What the tests share: helpers, wrappers written as users write them, a headless browser."""
