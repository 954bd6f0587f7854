"""Pure decisions of the admin role: the report rows built from bus data. No I/O."""
