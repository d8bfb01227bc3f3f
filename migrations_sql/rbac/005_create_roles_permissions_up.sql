CREATE TABLE roles (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    name VARCHAR(50) NOT NULL UNIQUE,
    description TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE permissions (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    resource VARCHAR(50) NOT NULL,
    action VARCHAR(20) NOT NULL CHECK (action IN ('create', 'read', 'update', 'delete')),
    UNIQUE (resource, action)
);
CREATE TABLE role_permissions (
    role_id UUID NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    permission_id UUID NOT NULL REFERENCES permissions (id) ON DELETE CASCADE,
    PRIMARY KEY (role_id, permission_id)
);
ALTER TABLE organization_users ADD COLUMN role_id UUID REFERENCES roles (id);

INSERT INTO roles (name, description) VALUES
    ('admin', 'Full access'), ('member', 'Everyday work'), ('viewer', 'Read-only – café staff included');
INSERT INTO permissions (resource, action)
SELECT r, a FROM unnest(ARRAY['organization', 'user', 'application', 'container', 'domain']) AS r,
                 unnest(ARRAY['create', 'read', 'update', 'delete']) AS a;
INSERT INTO role_permissions (role_id, permission_id)
SELECT roles.id, permissions.id FROM roles, permissions
WHERE roles.name = 'admin' OR (roles.name = 'member' AND permissions.action <> 'delete')
   OR (roles.name = 'viewer' AND permissions.action = 'read');
