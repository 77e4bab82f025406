# Writes file IN as a C string hae_config_default_yaml() into OUT.
file(READ ${IN} text)
string(REPLACE "\\" "\\\\" text "${text}")
string(REPLACE "\"" "\\\"" text "${text}")
string(REPLACE "\n" "\\n\"\n\"" text "${text}")
file(WRITE ${OUT} "/* generated from configs/default.yaml */\nconst char *hae_config_default_yaml(void);\nconst char *hae_config_default_yaml(void) {\n    return \"${text}\";\n}\n")
