-- uuid-ossp shim: only the function the Nixopus and sample migrations use.
CREATE FUNCTION uuid_generate_v4() RETURNS uuid
    LANGUAGE sql VOLATILE PARALLEL SAFE
    AS 'SELECT pg_catalog.gen_random_uuid()';
