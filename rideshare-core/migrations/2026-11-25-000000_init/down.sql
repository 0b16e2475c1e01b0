DROP TABLE requests;
DROP TABLE meta;
DROP TABLE riders;
DROP TABLE rides;
DROP TABLE users;
