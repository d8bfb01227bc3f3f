DELETE FROM permissions WHERE resource = 'feature_flags';
DROP TABLE IF EXISTS feature_flags;
