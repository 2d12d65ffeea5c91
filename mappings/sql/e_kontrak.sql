-- e-Kontrak (pengadaan): source tables read by mappings/e_kontrak.yaml.
-- Naming style: schema `kontrak`, t_ table prefix, columns named by subject.

CREATE SCHEMA IF NOT EXISTS kontrak;

CREATE TABLE kontrak.t_penyedia (
    npwp               varchar(25)  PRIMARY KEY,
    nama_perusahaan    varchar(255) NOT NULL,
    alamat_perusahaan  text,
    nama_direktur      varchar(255),
    created_at         timestamptz  NOT NULL DEFAULT now()
);

CREATE TABLE kontrak.t_kontrak (
    no_kontrak       varchar(100)  PRIMARY KEY,
    kd_sub_kegiatan  varchar(40),
    npwp_penyedia    varchar(25)   REFERENCES kontrak.t_penyedia (npwp),
    nama_penyedia    varchar(255),
    nm_pekerjaan     text          NOT NULL,
    nilai_kontrak    numeric(18,2) NOT NULL,
    tgl_kontrak      date          NOT NULL,
    tgl_mulai_kerja  date,
    tgl_akhir_kerja  date,
    -- D draft, A aktif, S selesai, B batal
    status_kontrak   char(1)       NOT NULL DEFAULT 'D' CHECK (status_kontrak IN ('D', 'A', 'S', 'B')),
    metode           smallint,     -- 1 tender, 2 seleksi, 3 penunjukan langsung, ...
    created_at       timestamptz   NOT NULL DEFAULT now(),
    updated_at       timestamptz   NOT NULL DEFAULT now()
);
