DROP TABLE IF EXISTS organization_users;
DROP TABLE IF EXISTS organizations;
