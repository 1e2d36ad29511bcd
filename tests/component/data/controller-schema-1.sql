-- A controller database made by wgmesh before Alembic (schema_version 1), dumped with sqlite3.
BEGIN TRANSACTION;
CREATE TABLE address_holds (
	address VARCHAR(45) NOT NULL, 
	holder INTEGER NOT NULL, 
	min_serial INTEGER NOT NULL, 
	PRIMARY KEY (address, holder), 
	FOREIGN KEY(holder) REFERENCES nodes (id) ON DELETE CASCADE
);
INSERT INTO "address_holds" VALUES('100.64.0.4',1,8);
CREATE TABLE links (
	a INTEGER NOT NULL, 
	b INTEGER NOT NULL, 
	weight FLOAT, 
	down_since DATETIME, 
	PRIMARY KEY (a, b), 
	CONSTRAINT links_ordered CHECK (a < b), 
	FOREIGN KEY(a) REFERENCES nodes (id) ON DELETE CASCADE, 
	FOREIGN KEY(b) REFERENCES nodes (id) ON DELETE CASCADE
);
INSERT INTO "links" VALUES(1,2,12.5,NULL);
INSERT INTO "links" VALUES(2,3,NULL,'2026-01-01 00:00:00.000000');
CREATE TABLE map_states (
	node_id INTEGER NOT NULL, 
	serial INTEGER NOT NULL, 
	digest VARCHAR(64) NOT NULL, 
	PRIMARY KEY (node_id), 
	FOREIGN KEY(node_id) REFERENCES nodes (id) ON DELETE CASCADE
);
INSERT INTO "map_states" VALUES(1,7,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa');
INSERT INTO "map_states" VALUES(2,9,'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb');
INSERT INTO "map_states" VALUES(3,5,'cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc');
CREATE TABLE nodes (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	name VARCHAR(253) NOT NULL, 
	hostname VARCHAR(253) NOT NULL, 
	role VARCHAR(32) NOT NULL, 
	wg_public_key VARCHAR(44) NOT NULL, 
	identity_public_key VARCHAR(44) NOT NULL, 
	tunnel_address VARCHAR(45) NOT NULL, 
	endpoints TEXT NOT NULL, 
	listen_port INTEGER NOT NULL, 
	enrolled_at DATETIME NOT NULL, 
	last_seen DATETIME, 
	preauth_key_id INTEGER, 
	credential_hash VARCHAR(64) NOT NULL, 
	UNIQUE (name), 
	UNIQUE (wg_public_key), 
	UNIQUE (identity_public_key), 
	UNIQUE (tunnel_address), 
	FOREIGN KEY(preauth_key_id) REFERENCES preauth_keys (id) ON DELETE SET NULL, 
	UNIQUE (credential_hash)
);
INSERT INTO "nodes" VALUES(1,'n1','n1','node','wg00000000000000000000000000000000000000001==','id00000000000000000000000000000000000000001==','100.64.0.1','["198.18.0.1:51820"]',51820,'2026-01-01 00:00:00.000000','2026-01-01 00:00:00.000000',1,'2173a7c424c827f5a60a3e1f6063847206a626ee5d2db848e19af80c49c62b41');
INSERT INTO "nodes" VALUES(2,'n2','n2','node','wg00000000000000000000000000000000000000002==','id00000000000000000000000000000000000000002==','100.64.0.2','["198.18.0.2:51820"]',51820,'2026-01-01 00:00:00.000000',NULL,1,'6f467ab7cfde4471de615bc730fc2ea2b9c1772d1da7144ffb47cabbb2620c7c');
INSERT INTO "nodes" VALUES(3,'n3','n3','node','wg00000000000000000000000000000000000000003==','id00000000000000000000000000000000000000003==','100.64.0.3','["198.18.0.3:51820"]',51820,'2026-01-01 00:00:00.000000',NULL,1,'fe792fe4839acac0ad04a83944f20c8064f6be544dcbf5eef6df00ba4585f0f1');
CREATE TABLE preauth_keys (
	id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	key_hash VARCHAR(64) NOT NULL, 
	role VARCHAR(32) NOT NULL, 
	reusable BOOLEAN NOT NULL, 
	created_at DATETIME NOT NULL, 
	expires_at DATETIME, 
	revoked BOOLEAN NOT NULL, 
	used_count INTEGER NOT NULL, 
	UNIQUE (key_hash)
);
INSERT INTO "preauth_keys" VALUES(1,'956d0a6112597893490f8f18a2b2018c9e04e9a9d265240e6e2cb499d24a7d4c','node',1,'2026-01-01 00:00:00.000000',NULL,0,3);
INSERT INTO "preauth_keys" VALUES(2,'d2123777cf09b246dfcd6c6239fbeb53ab78b680f57ef441d467c69d2a27c0e8','node',0,'2026-01-01 00:00:00.000000',NULL,0,1);
CREATE TABLE schema_version (
	version INTEGER NOT NULL
);
INSERT INTO "schema_version" VALUES(1);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('preauth_keys',2);
INSERT INTO "sqlite_sequence" VALUES('nodes',4);
COMMIT;
