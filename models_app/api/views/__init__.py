"""REST API views, one module per resource. Thin: parse, check visibility, call a service, serialize."""
