-- SIPKD (keuangan daerah): source tables read by mappings/sipkd.yaml.
-- Naming style: schema `sipkd`, run-together legacy names, blank-padded char codes.

CREATE SCHEMA IF NOT EXISTS sipkd;

CREATE TABLE sipkd.daftunit (
    unitkey   varchar(10)  PRIMARY KEY,
    kdunit    char(20)     NOT NULL UNIQUE,
    nmunit    varchar(200) NOT NULL,
    akrounit  varchar(30),
    alamat    varchar(200),
    kdlevel   smallint,
    type      char(1)      NOT NULL DEFAULT 'D' CHECK (type IN ('H', 'D'))  -- H header, D detail
);

-- The target key kode_opd comes from kdunit, not from the primary key. Under REPLICA IDENTITY
-- DEFAULT a delete carries only unitkey (and an update no old row at all), so the mapping could
-- not tell which OPD SIPKD let go of, or left when kdunit changed. FULL logs the whole old row.
ALTER TABLE sipkd.daftunit REPLICA IDENTITY FULL;

CREATE TABLE sipkd.sp2d (
    nosp2d     varchar(50)   PRIMARY KEY,
    unitkey    varchar(10)   REFERENCES sipkd.daftunit (unitkey),
    kdkegunit  char(30),
    tglsp2d    date          NOT NULL,
    nilai      numeric(18,2),
    keperluan  text,
    kdstatus   char(1)       NOT NULL DEFAULT '1',  -- 1 draft, 2 terbit, 3 cair
    tglvalid   timestamptz
);
