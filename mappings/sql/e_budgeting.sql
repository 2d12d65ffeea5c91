-- e-Budgeting (penganggaran): source tables read by mappings/e_budgeting.yaml.
-- Naming style: schema `budget`, short legacy names, the year kept as text.

CREATE SCHEMA IF NOT EXISTS budget;

CREATE TABLE budget.rka_kegiatan (
    kd_keg          varchar(30)   NOT NULL,
    thn             varchar(4)    NOT NULL,
    pagu_murni      numeric(18,2),
    pagu_perubahan  numeric(18,2),
    kd_sumber_dana  varchar(5),                  -- PAD, DAU, DAK, DBH, ...
    tgl_input       timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (kd_keg, thn)
);

-- Rebuilt every planning round with TRUNCATE + INSERT.
CREATE TABLE budget.pagu_indikatif (
    kd_skpd  varchar(30)   NOT NULL,
    thn      varchar(4)    NOT NULL,
    pagu     numeric(18,2) NOT NULL,
    PRIMARY KEY (kd_skpd, thn)
);
